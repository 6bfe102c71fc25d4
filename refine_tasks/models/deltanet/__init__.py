"""DeltaNet: the token mixer (`layer`) and the delta rule over a sequence split at prefix
lengths (`segments`), which gives the state after every prefix in one pass."""
