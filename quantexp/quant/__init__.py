"""Quantization primitives shared by methods and the precision search: integer
grids (``int_grid``), torch.ao static qconfigs (``qconfig``), calibration draws
(``calibration``), per-layer error (``layer_error``), mixed-precision layer
wrappers and the assignable layers (``mixed_layers``), sensitivity analysis
(``sensitivity``, ``hessian``), the assignment solver (``solver``) and ONNX graph
inspection (``onnx_graph``)."""
