// The format's scheme names and section layouts are defined by the scheme codecs.
@_exported import LMSchemes
