"""HL7 v2 over MLLP: the appliance receives ORU^R01 from monitors and gateways."""
