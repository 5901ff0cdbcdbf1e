"""The appliance's own alarm system: conditions, signal states, commands, NEWS2 (README, 'Alarms')."""
