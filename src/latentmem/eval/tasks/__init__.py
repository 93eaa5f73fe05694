"""The built-in evaluation tasks, one family per module; `latentmem.eval.task.BUILTIN_TASKS` names them.

Read from local files (`path=`, optional `train_path=`; `files` holds the readers and the split rule):
    task       record fields                                 a completion is scored by
  `math`:
    gsm8k      question, answer ("... #### 72")              `#### n`, else `\\boxed{n}`, else the last number
    math       problem, solution (`\\boxed{}`), answer?      its `\\boxed{}`, normalised LaTeX
  `choice`:
    gpqa       question, choices, answer | GPQA's CSV        the choice letter it names
    bigbench   a BIG-bench task.json (generation or multiple choice, chosen automatically)
  `qa`:
    triviaqa   question, answer (aliases)                    containing an alias
    popqa      question, possible_answers                    containing an alias
Code, run in a limited subprocess (`code`): kodcode, humaneval.
Generated, no data (`synthetic`): arithmetic, facts.

Importing this package imports none of them: `get_task` imports a task's module when it first builds one.
"""
