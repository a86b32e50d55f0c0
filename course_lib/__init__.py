"""course_lib: the helper library behind the RL post-training course.

One module per idea a learner meets: ``config`` (profiles), ``data`` (GSM8K, pocket-math,
facts), ``prompts``, ``models``, ``sampling``, ``rewards``, ``advantages``, ``losses``,
``evaluation``, ``analysis``, ``plots``, ``widgets``, ``environment``, ``train`` (one module per
method: GRPO from scratch, TRL's GRPO, SFT, expert iteration, ORPO, and the recipes),
``showdown`` and ``report`` (lesson 09's study and its report), ``memory`` and ``configs``
(scaling out), ``bench`` (benchmarks) and ``pocket`` (the course's own tiny model).
"""

__version__ = "0.1.0"
