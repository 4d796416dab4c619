"""The model side of the pictures (maskfeat_jax.visualize): the CLI (`cli`) and the pre-training hook (`hook`)."""
