"""Helpers the unit and integration tests share: where things are (``paths``), the contract every model passes
(``contract``), a stand-in model that samples a fixed image bank (``image_bank``) and the callbacks that
subprocess runs load by class path (``ddp_probe``, ``fault_probe``)."""
