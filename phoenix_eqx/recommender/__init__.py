"""`Recommender`: fit Phoenix on any interaction log, recommend, save and load.

```python
import phoenix_eqx as px
rec = px.Recommender.fit(user_ids, item_ids, timestamps)
items, scores = rec.recommend(user_ids, histories, k=10)
```

`fit` trains the two Phoenix stages on each user's time-ordered items: the retrieval model with
every position of every sequence as a target (one causal pass per sequence), then the ranker
on the trained retriever's own top results. Each user's last interaction is held out; it alone
drives early stopping and model selection. `recommend` runs the stages as Phoenix serves:
retrieval over the whole corpus, then the ranker re-scores those items with candidate
isolation: retrieval's logit plus the ranker's learned correction (`ranker_loss="listwise"`),
or a weighted sum of action probabilities (`"bce"`), plus a co-occurrence prior at a weight
validation chooses (without a ranker, retrieval's candidates and the prior's suggestions are
ordered by retrieval's logit plus the weighted prior).

The package's files are the stages: `options` (`FitOptions`), `index` (ids to rows),
`batches` and `models` (what both stages feed and train), `retrieval_stage`, `ranker_stage`,
`validation`, `corpus_search` (exact top-k over the corpus), `cooccurrence` (the prior),
`two_stage` (serving),
`persistence` (save / load) and `api` (the class).
"""

from ..training.loop import ValidationRecord
from .api import Recommender
from .cooccurrence import CooccurrencePrior
from .options import (
    FitOptions,
    ModelOptions,
    OptimizationOptions,
    RankerStageOptions,
    RetrievalStageOptions,
    ServingOptions,
)

__all__ = [
    "CooccurrencePrior",
    "FitOptions",
    "ModelOptions",
    "OptimizationOptions",
    "RankerStageOptions",
    "Recommender",
    "RetrievalStageOptions",
    "ServingOptions",
    "ValidationRecord",
]
