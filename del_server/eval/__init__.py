"""The evaluation (DESIGN §6): privacy, utility, communication and speed, with plots.

config         what a run measures and on how much data (smoke, quick, full presets)
context        the model, trained adapter and data split, loaded once; disjoint token sets
mechanisms     DEL's binomial quantizer and the Gaussian baseline behind one interface
methods        how a prompt reaches the LLM: projection, mechanism, soft prompt
baselines      every compared method, baselines matched to DEL's levels, their soft prompts
privacy        nearest-neighbour, likelihood and learned inversion attacks; exact ε
coherence      greedy continuations and the sentence encoder that scores them
utility        loss, perplexity and coherence over noise seeds
communication  bytes on the wire through gRPC, computed sizes, symbol entropy
speed          codec and end-to-end benchmarks, latency distributions
findings       the comparisons and the sentences the report prints about them
plots          the figures, from the report dict alone
report         EVAL.md and the headline table the README quotes
pipeline       all of it in order; cli: `del-server eval`
"""
