"""A plugin whose import fails, as one with a missing dependency would."""

raise ImportError("peftkit-broken needs the package 'not_installed_anywhere'")
