"""course_lib: the helper library behind the RL post-training course.

One module per idea a learner meets: ``config`` (profiles), ``data`` (GSM8K, pocket-math,
facts), ``prompts``, ``models``, ``sampling``, ``rewards``, ``advantages``, ``losses``,
``evaluation``, ``analysis``, ``plots``, ``widgets``, ``environment``, ``train`` (GRPO from
scratch and the TRL recipes), ``bench`` (benchmarks) and ``pocket`` (the course's own tiny model).
"""

__version__ = "0.1.0"
