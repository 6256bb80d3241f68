#!/usr/bin/env python3
"""CDK entry point (`npx cdk synth`, or `python app.py`): see stacks/app.py and README "Infrastructure (CDK)"."""
from stacks.app import build_app

if __name__ == "__main__":
    build_app().synth()
