"""How a model learns: config, data, tasks, state, steps, parallelism, checkpoints, the loop."""
