"""The demo model: a tiny FLUX.1-Kontext trained from scratch on a synthetic shapes edit task.

Why: the parity harness needs a Kontext model that runs on a CPU in a fraction of a second per edit
AND whose outputs a person can judge by eye, plus a LoRA with a visible effect, so that a report's
pictures mean something. Random weights give coloured noise; this package trains real ones.

    python -m parity.demo.build --out DIR     # everything, seeded (see build.py for the steps)

Modules: ``scenes`` (the task: shapes, instructions, targets, the zxq style), ``components`` (model
configurations, tokenizers, text encoders), ``vae`` (VAE training), ``flow`` (flow-matching training
of the transformer and the LoRA), ``lora`` (AI Toolkit's LoRA layout), ``evaluate`` (the measured
bars), ``sheet`` (contact sheets), ``runs`` (run definitions for genuine AI Toolkit previews).
"""
