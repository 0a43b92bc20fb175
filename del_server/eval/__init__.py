"""The evaluation (DESIGN §6): privacy, utility, communication and speed, with plots.

config         what a run measures and on how much data (smoke, quick, full presets)
context        the model, trained adapter, data split and attacker, loaded once; the prompt
               sets (calibration, held-out attack, out of domain), disjoint
methods        how a prompt reaches the LLM: projection, mechanism, soft prompt
baselines      every compared method, baselines matched to DEL's levels by DEL's own
               calibration, their soft prompts
privacy        every attack of del_server.attacks per private method, in and out of domain;
               exact ε
coherence      greedy continuations and the sentence encoder that scores them
utility        loss, perplexity and coherence over noise seeds
communication  bytes on the wire through gRPC, computed sizes, symbol entropy
speed          codec and end-to-end benchmarks, latency distributions
findings       the comparisons and the sentences the report prints about them
plots          the figures, from the report dict alone
report         EVAL.md and the headline table the README quotes
pipeline       all of it in order; cli: `del-server eval`
"""
