"""Training: GRPO from scratch (``grpo``) and the TRL/PEFT recipes (``recipes``)."""
