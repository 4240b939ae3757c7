"""Settings from the environment: secrets never show, bad values are named."""

from __future__ import annotations

import pytest

from omi_batch.config import Secret, Settings
from omi_batch.errors import ConfigError


def test_secrets_never_show_themselves():
    settings = Settings.from_env({"OMI_API_KEY": "k-123456", "OMI_WEBHOOK_SECRET": "s-654321"})
    for text in (repr(settings), str(settings), repr(settings.api_key), f"{settings.api_key}"):
        assert "k-123456" not in text and "s-654321" not in text
    assert settings.api_key.value == "k-123456"
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(Secret("x"))


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pw@public-v1.omicall.com",
        "https://public-v1.omicall.com/?apiKey=abc",
        "https://public-v1.omicall.com/#k",
    ],
)
def test_a_base_url_carrying_credentials_is_refused(url):
    settings = Settings.from_env({"OMI_BASE_URL": url, "OMI_API_KEY": "k"})
    with pytest.raises(ConfigError) as error:
        settings.require_api()
    assert str(error.value) == (
        "OMI_BASE_URL must be a plain address such as https://public-v1.omicall.com: no user, "
        "password or query in it (the API key goes in OMI_API_KEY)"
    )
    assert error.value.exit_code == 3


def test_blank_variables_count_as_missing():
    settings = Settings.from_env({"OMI_BASE_URL": "  ", "OMI_API_KEY": ""})
    assert settings.base_url is None and settings.api_key is None
