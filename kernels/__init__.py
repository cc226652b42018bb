"""Triton kernels of jfdeploy (installed as ``jfdeploy.kernels``).

``topk_attention``: the fused top-k joint attention kernel and its launch wrapper; the reference
formulation it must match is ``jfdeploy.model.attention.topk_joint_attention``.
``report``: ahead-of-time compile report of that kernel per NVIDIA arch (``jfdeploy kernels``).
"""
