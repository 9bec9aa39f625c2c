"""The Ray Data stages: the inter-embedding cache (stage 1, `inter`) and scores (stage 2, `scoring`).

`options` says what a stage runs and how, `driver` runs a stage over a manifest (keys, what is
committed, crash isolation, progress, summary), `resources` sizes its actor pool, `batching` and
`inference` turn videos into model inputs inside an actor, `rescore` is the nightly job.
"""

from pipeline.stages.batching import forward_grouped, open_video, video_facts, videos_per_forward
from pipeline.stages.driver import (
    ERROR_CODES,
    NoInterEmbedding,
    Progress,
    StageSummary,
    duration,
    failure,
    keyed_manifest,
    load_table,
)
from pipeline.stages.inter import INTER_SCHEMA, InterCache, InterExtractor, extract_inter
from pipeline.stages.options import ModelSpec, RunOptions
from pipeline.stages.resources import ActorPlan, actors_per_gpu, plan_actors
from pipeline.stages.scoring import SCORE_SCHEMA, Scorer, score

__all__ = [
    "ERROR_CODES", "INTER_SCHEMA", "SCORE_SCHEMA", "ActorPlan", "InterCache", "InterExtractor", "ModelSpec",
    "NoInterEmbedding", "Progress", "RunOptions", "Scorer", "StageSummary", "actors_per_gpu", "duration",
    "extract_inter", "failure", "forward_grouped", "keyed_manifest", "load_table", "open_video", "plan_actors",
    "score", "video_facts", "videos_per_forward",
]
