"""actspace.pipeline: the whole job from one config file (`actspace run`, `actspace demo`).

    from actspace.pipeline import load_config, run_pipeline
    recs = run_pipeline(load_config("job.yaml"), "out/")     # rerun: finished stages skip
"""
from .config import demo_config, load_config, resolve_config
from .stages import run_pipeline, summary_table

__all__ = ["demo_config", "load_config", "resolve_config", "run_pipeline", "summary_table"]
