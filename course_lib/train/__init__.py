"""Training, one module per method with its settings beside it.

* ``grpo``: GRPO from scratch (``GRPOSettings``, ``GRPOLoop``), lesson 05;
* ``grpo_trl``: TRL's ``GRPOTrainer`` on the same settings, lesson 06;
* ``rejection_sampling``: sample, verify, SFT rows and preference pairs (data only), lessons 07-08;
* ``sft``: TRL's ``SFTTrainer`` on those rows; ``expert_iteration``: rounds of sample -> filter -> SFT
  (``RSSettings``), lesson 07;
* ``orpo``: TRL's ``ORPOTrainer`` (``ORPOSettings``), lesson 08;
* ``trainers``: what the TRL trainers share (devices, epochs, live curves);
* ``recipes``: the course's measured settings per profile, built once from a profile;
* ``__main__``: ``python -m course_lib.train``, one entry point for every launcher.
"""
