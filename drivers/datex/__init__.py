"""GE Datex-Ohmeda S/5 computer interface (DRI) driver."""
