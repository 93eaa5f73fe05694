"""Evaluation: tasks (`task`, `tasks/`), the methods compared on them (`method`, `methods/`), the
`latentmem compare` harness (`compare`, `stats`) and the lm-evaluation-harness adapter (`lm_eval_adapter`).

Importing this package imports none of them.
"""
