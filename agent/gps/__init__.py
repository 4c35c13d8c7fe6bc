"""GNSS: the NMEA reader, receiver sources (serial, gpsd, replay) and reporting strategy."""
