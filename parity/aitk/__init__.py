"""Import an AI Toolkit FLUX.1-Kontext run: its previews as Cases that should redraw them."""
from .config import JobConfig, SampleItemSettings, SampleSettings, load_job_config
from .prompts import ParsedPrompt, PromptArgs, inject_trigger, parse_prompt, sample_args
from .run import AitkRun, Preview, base_twins, load_run, preview_cases, preview_notes, preview_requests

__all__ = [
    "AitkRun", "JobConfig", "ParsedPrompt", "Preview", "PromptArgs", "SampleItemSettings", "base_twins",
    "SampleSettings", "inject_trigger", "load_job_config", "load_run", "parse_prompt", "preview_cases", "preview_notes", "preview_requests",
    "sample_args",
]
