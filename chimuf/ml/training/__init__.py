"""Training: the resumable fit loop and its stopping rules, the input pipeline and augmentation,
every random stream, callbacks, TensorBoard logs, the speed probe and the pool of workers."""
