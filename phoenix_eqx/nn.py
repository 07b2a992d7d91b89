"""Building blocks of the Phoenix models, for those who assemble their own: the transformer's
layers, the input embedding, the retrieval candidate tower and hash tables split over devices.

```python
from phoenix_eqx import nn
layer = nn.DecoderLayer(config, key=key)
```
"""

from .embedding import InputEmbedding
from .retrieval import CandidateTower
from .sharded_tables import ShardedHashEmbeddingTables, shard_tables, sharded_lookup_rows
from .transformer import (
    Attention,
    DecoderLayer,
    GatedGeluFFN,
    Linear,
    RMSNorm,
    Transformer,
    apply_rotary,
)

__all__ = [
    "Attention",
    "CandidateTower",
    "DecoderLayer",
    "GatedGeluFFN",
    "InputEmbedding",
    "Linear",
    "RMSNorm",
    "ShardedHashEmbeddingTables",
    "Transformer",
    "apply_rotary",
    "shard_tables",
    "sharded_lookup_rows",
]
