"""Triton kernels of the reference model, one concept per module:

- ``reference_impl.kernels.flash_attention``: FlashAttention forward and backward (causal, grouped-query), and
  the naive ``attention_reference`` it is tested against.
- ``reference_impl.kernels.rmsnorm``: fused RMSNorm forward and backward.

Import from the modules themselves; this package imports nothing, so importing it does not import Triton.

The kernels launch on a GPU. To run them on a CPU, through Triton's interpreter, set ``TRITON_INTERPRET=1`` in
the environment before Triton is first imported in the process: Triton decides when each function is decorated
(its own library functions included) whether it is compiled or interpreted. ``INTERPRETED`` in each module
records which happened.
"""
