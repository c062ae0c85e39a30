// The runtime's forward pass builds on the schemes' kernels and the compute context.
@_exported import LMSchemes
