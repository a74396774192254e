"""The run layer: checks, the stages of a run and what they share, the pipeline, the terminal and the command line."""
