#!/usr/bin/env sh
# Print the path of a Python >= 3.12 (jax 0.11 needs it), or explain and fail.
for candidate in "$PYTHON" python3.14 python3.13 python3.12 python3 python \
    $(command -v pyenv >/dev/null 2>&1 && ls -d "$(pyenv root)"/versions/3.1[2-9]*/bin/python 2>/dev/null) \
    /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do
  [ -n "$candidate" ] || continue
  path=$(command -v "$candidate" 2>/dev/null) || continue
  if "$path" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
    echo "$path"
    exit 0
  fi
done
echo "find_python: no Python >= 3.12 with venv found; install one (e.g. 'pyenv install 3.12') or set PYTHON=/path/to/python3.12" >&2
exit 1
