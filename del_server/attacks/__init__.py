"""Token inversion at the server: every attack DEL's privacy levels are calibrated and
evaluated against, in one place (train.calibrate and eval.privacy both call suite.Attacker).

mechanisms  DEL's binomial quantizer and the Gaussian baseline: privatize, decode, likelihood
tokenwise   the exact per-token log-likelihood matrix; nearest-neighbour and likelihood attacks
learned     the attacker's inversion network, trained on public text
sequence    a bigram prior: forward-backward marginals and Viterbi over the pruned lattice
trigram     a trigram prior: forward-backward over pairs of the bigram posterior's candidates
beam        the provider's own LLM as the prior: batched beam search with bigram look-ahead
particle    the same prior, sampled: a twisted particle filter and smoother (each token's
            posterior marginal), whose particles also give a server the posterior mixture
recovery    token, content-token and whole-prompt recovery with prompt-clustered intervals
suite       the attacker: runs any of them on the same symbols of the same prompts
"""
