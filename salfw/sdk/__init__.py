"""salfw's public toolkit for method authors (built-in plugins use nothing else).

A method plugin imports :mod:`salfw.core` (contracts, parameters, errors, the
context) and these modules, never another plugin:

* :mod:`salfw.sdk.backprop`: target gradients and rectifier overrides (guided
  backprop, deconvnet).
* :mod:`salfw.sdk.layers`: naming, tracing and capturing layers (Grad-CAM,
  VisualBackProp).
* :mod:`salfw.sdk.propagation`: the relevance engine, its rules and composites
  (LRP, Deep Taylor, DeepLIFT, excitation backprop).
* :mod:`salfw.sdk.geometry`: the exact local plane of a piecewise-linear network
  (local-linear, DeepFool, GeoSal).
* :mod:`salfw.sdk.hiding`: segmentation, window masks, fills and the feature
  hider of black-box perturbation methods (occlusion, LIME, KernelSHAP, RISE).
* :mod:`salfw.sdk.masks`: mask parametrisation, upsampling, blur and penalties
  (meaningful and extremal perturbation, Noise Mask).
* :mod:`salfw.sdk.reference`: one resolver for reference inputs (baselines and
  fills) by perturbation name, number or tensor.
* :mod:`salfw.sdk.understanding`: helpers of the network-level explainers
  (layer taps, rule terms, data splits, model presets and plots).
"""
