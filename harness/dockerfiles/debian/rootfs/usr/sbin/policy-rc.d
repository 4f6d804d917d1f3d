#!/bin/sh
# Image builds must not start daemons (same file as the official debian images).
exit 101
