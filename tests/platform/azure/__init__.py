"""Tests of the Azure adapters against loopback fakes."""
