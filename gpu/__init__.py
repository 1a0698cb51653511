"""cram.gpu: the hybrid SSM + attention model with CRAM routing, its fused ops and training.

Runs on the CPU with PyTorch reference ops; CUDA tensors dispatch to Triton kernels.
"""
