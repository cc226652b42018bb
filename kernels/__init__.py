"""Triton kernels of jfdeploy (installed as ``jfdeploy.kernels``).

The fused top-k joint attention kernel is issue 4; its reference formulation, which the kernel
must match, is ``jfdeploy.model.attention.topk_joint_attention``.
"""
