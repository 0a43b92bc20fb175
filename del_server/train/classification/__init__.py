"""Training for classification: an encoder, a task's labelled sentences, and the adapter that
lets the encoder classify private prompts (projection, calibrated levels, per level a soft
prompt and a head)."""
