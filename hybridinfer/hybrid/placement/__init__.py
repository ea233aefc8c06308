"""Hot/cold neuron placement: what must live on the GPU, which neurons fit beside it, and the split file."""
