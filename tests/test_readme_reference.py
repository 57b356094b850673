"""README's centre-profile reference is a profile fedmammo accepts, key for key."""

from __future__ import annotations

import re

import yaml
from helpers.run_helpers import REPO

from fedmammo.config import CentreProfile


def test_the_readme_profile_reference_validates_as_a_profile():
    # Prepare: the YAML block under "Centre profile (`centres/*.yaml`):"
    text = (REPO / "README.md").read_text()
    block = re.search(r"Centre profile \(`centres/\*\.yaml`\):\s*```yaml\n(.*?)```", text, re.S)
    # Execute
    profile = CentreProfile.model_validate(yaml.safe_load(block.group(1)))
    # Assert: every key it shows is one the profile model knows (unknown keys are errors),
    # and the values it shows are the ones it explains
    segment = profile.data.synthetic.segments[0]
    assert (segment.prevalence, segment.lesion_prevalence) == (0.5, 0.5)
    assert profile.data.synthetic.calcification_fraction == 0.3
    assert profile.labels.reader_noise == 0.1
    assert profile.privacy.accountant == "rdp"
