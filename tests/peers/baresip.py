"""baresip as a second, independent SIP phone on loopback: it calls with a WAV file as its
microphone and records what it heard (module sndfile: ``dump-*-dec.wav``)."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np

from tests.peers.availability import require_binary
from tests.sip.sipp import free_port

CONFIG = """\
module_path {modules}
sip_listen 127.0.0.1:{sip_port}
audio_source aufile,{wav}
audio_player alsa,null
audio_alert alsa,null
rtp_ports {rtp_low}-{rtp_high}
snd_path {recordings}
module g711.so
module aufile.so
module alsa.so
module sndfile.so
module_tmp uuid.so
module_tmp account.so
module_app menu.so
"""
ACCOUNT = "<sip:tester@127.0.0.1>;regint=0;audio_codecs={codecs}\n"


async def call_with_wav(
    workdir: Path, target: str, wav: Path, *, codecs: str = "PCMU,PCMA", timeout: float = 60
) -> tuple[np.ndarray, int, str]:
    """Call ``target`` speaking ``wav``; hangs up when the file ends. Returns what baresip heard
    (samples, rate) and its console output."""
    binary = require_binary("baresip")
    config_dir, recordings = workdir / "baresip", workdir / "heard"
    config_dir.mkdir()
    recordings.mkdir()
    rtp = free_port() & ~1
    (config_dir / "config").write_text(
        CONFIG.format(
            modules=Path(binary).resolve().parent.parent / "lib" / "baresip" / "modules",
            sip_port=free_port(),
            wav=wav,
            rtp_low=rtp,
            rtp_high=rtp + 10,
            recordings=recordings,
        )
    )
    (config_dir / "accounts").write_text(ACCOUNT.format(codecs=codecs))
    process = await asyncio.create_subprocess_exec(
        binary, "-f", str(config_dir), "-n", "127.0.0.1", "-e", f"/dial {target}",
        "-t", str(int(timeout)),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout + 10)
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
    text = output.decode(errors="replace")
    heard = sorted(recordings.glob("dump-*-dec.wav"))
    assert heard, f"baresip recorded nothing:\n{text[-3000:]}"
    with wave.open(str(heard[0])) as recording:
        rate = recording.getframerate()
        samples = np.frombuffer(recording.readframes(recording.getnframes()), np.int16)
    return samples, rate, text


async def call_with_audio(
    workdir: Path, target: str, audio: np.ndarray, *, rate: int = 8000
) -> tuple[np.ndarray, int, str]:
    """:func:`call_with_wav` speaking ``audio`` (mono int16 at ``rate``), written to
    ``caller.wav`` in ``workdir``; the call is given the audio's length plus 4 s."""
    wav = workdir / "caller.wav"
    with wave.open(str(wav), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(audio.tobytes())
    return await call_with_wav(workdir, target, wav, timeout=len(audio) / rate + 4)
