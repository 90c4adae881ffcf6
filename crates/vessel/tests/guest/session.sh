#!/bin/sh
# /scripts/session: one agent session (see agent.sh): run the one line the client sent.
read -r line
eval "$line" 2>&1
