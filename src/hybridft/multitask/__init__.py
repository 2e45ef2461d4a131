"""Multi-task training: one shared encoder, one head per task (the MT-DNN pattern)."""
