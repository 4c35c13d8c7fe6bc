"""Capture of video, stills and audio into sealed segments."""
