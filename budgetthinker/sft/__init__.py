"""SFT stage: control-token trace data, weighted special-token loss, LLaMA-Factory launcher."""
