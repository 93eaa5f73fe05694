"""The built-in methods the harness compares, one family per module; `latentmem.eval.method` holds their
contract (`Method`, `Context`, `Budget`) and the registry that imports each one only when it is used.

module   method
frozen   vanilla      the frozen model as it is.
         retrieval    few-shot memory (ExpeL/AWM-style): the most similar solved training examples,
                      retrieved from a `VectorMemory` store (MiniLM embeddings), are put into the prompt.
lora     lora-sft     LoRA fine-tuning of the reasoner with a trainable-parameter budget equal to the
                      weaver's (`latentmem.training.lora`).
         grpo         GRPO of the same budget-matched LoRA, with TRL's `GRPOTrainer` on the task's reward.
memgen   memgen-sft   MemGen: weaver SFT (`latentmem.training.sft`), reasoner frozen.
         memgen-grpo  MemGen: weaver GRPO on the task's reward (`latentmem.training.grpo`).
         memgen-rag   MemGen-SFT with a weaver that also reads the retrieved solved examples' vectors.
recall   recall       recall memory: the training examples as memories, `<recall>` -> memory head ->
                      the memory's vector injected as `<|memory_pad|>` (`latentmem.recall`).
         xrag         xRAG-style: the MiniLM top-1 memory projected into one embedding in the prompt.
`generate` holds the greedy completion every method uses, `recipes` the recipe config the trained ones share.

Same budget, same algorithm. Every trained method starts from scratch (a fresh LoRA, B = 0, or a fresh
weaver) and runs `budget.steps` optimiser steps of one recipe config (`recipe_dict`). The two SFT arms run
the same `training.loop.Trainer` on the same rows in the same order, so they differ only in what trains.
The two GRPO arms share the algorithm: TRL is configured with our loss (TRL's loss_type "grpo": token mean
per completion, mean over completions), reward scaling, schedule, warmup, weight decay, clipping,
sampling, beta, epsilon and one update per rollout batch; TRL's own prompt order remains. Each method
reports what it ran (`Method.training`), and the harness writes it into results.json and results.md.
"""
