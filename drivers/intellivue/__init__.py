"""Philips IntelliVue Data Export (MIB/RS232 and LAN): codec, session and monitor simulator."""
