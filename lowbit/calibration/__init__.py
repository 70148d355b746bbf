"""Calibration for GPTQ/AWQ: ``data`` turns a named dataset into token windows;
``sequential`` runs a model block by block over them, gathering each Linear's input statistics."""
