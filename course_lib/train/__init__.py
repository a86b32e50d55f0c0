"""Training: GRPO from scratch (``grpo``), rejection sampling and expert iteration
(``rejection_sampling``), the TRL/PEFT recipes (``recipes``), and one entry point for every
launcher (``python -m course_lib.train``, in ``__main__``)."""
