"""The provider's offline pipeline (DESIGN §5), one stage per module.

data        text files -> deterministic train/validation split -> (prompt, continuation) ids
noise       the client's quantizer in torch, for training and evaluation (same law)
objective   the frozen LLM scoring a continuation after [soft prompt] + [BOS] + prompt
loop        the shared optimisation loop: progress bar, checkpoints, resume, seeds
projection  W_p, W_d from PCA, fine-tuned with the LLM frozen
attacks     token inversion at the server: nearest neighbour and likelihood
calibrate   the privacy level at which the stronger attack reaches each target rate
soft_prompt one soft prompt per calibrated level
evaluate    clean / noisy + soft prompt / noisy / no-prompt losses over several seeds
pipeline    all of it in order, writing the adapter and its training report
"""
