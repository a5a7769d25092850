"""media/audio.py against independent facts: AAC encoded by Debian's ffmpeg (its MP4
extradata and packets read by PyAV, its ADTS output), AudioSpecificConfigs and LATM
StreamMuxConfigs written bit by bit from ISO 14496-3, the StreamMuxConfig FFmpeg and
GStreamer put in their SDPs, and a Matroska file with a G.711 ``A_MS/ACM`` track that
PyAV decodes."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import av
import pytest

from edge_agent.errors import FormatError
from edge_agent.media.audio import (
    WAVE_FORMAT_ALAW,
    WAVE_FORMAT_MULAW,
    AacConfig,
    LatmConfig,
    aac_config,
    adts_to_raw,
    asc_from_stream_mux_config,
    g711_codec_private,
    latm_config,
)


class BitWriter:
    """MSB-first bits, for configs written field by field."""

    def __init__(self) -> None:
        self.value = 0
        self.count = 0

    def put(self, count: int, value: int) -> BitWriter:
        assert 0 <= value < 1 << count
        self.value = (self.value << count) | value
        self.count += count
        return self

    def bytes(self) -> bytes:
        pad = -self.count % 8
        return (self.value << pad).to_bytes((self.count + pad) // 8, "big")


def asc_bits(writer: BitWriter, aot: int, index: int, channels: int, **ga: int) -> BitWriter:
    """An AudioSpecificConfig: AOT, frequency index, channels, GASpecificConfig."""
    writer.put(5, aot).put(4, index).put(4, channels)
    writer.put(1, ga.get("frame_length", 0)).put(1, ga.get("core", 0))
    if ga.get("core"):
        writer.put(14, 1234)
    return writer.put(1, 0)  # extensionFlag


def he_aac_bits(writer: BitWriter, aot: int = 5, channels: int = 2) -> BitWriter:
    """Explicit HE-AAC: 24 kHz core (index 6), 48 kHz extension (index 3), AAC-LC."""
    writer.put(5, aot).put(4, 6).put(4, channels).put(4, 3).put(5, 2)
    return writer.put(3, 0)  # GASpecificConfig


def stream_mux_config(asc: BitWriter, subframes: int = 1, frame_length_type: int = 0) -> bytes:
    writer = BitWriter().put(1, 0).put(1, 1).put(6, subframes - 1).put(4, 0).put(3, 0)
    writer.put(asc.count, asc.value)
    writer.put(3, frame_length_type).put(8, 0xFF)  # latmBufferFullness
    return writer.put(1, 0).put(1, 0).bytes()  # no other data, no CRC


def encode(path: Path, rate: int, channels: int, adts: bool) -> Path:
    """One second of a sine encoded by FFmpeg's AAC encoder (deterministic)."""
    command = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi"]
    command += ["-i", f"sine=frequency=440:duration=1:sample_rate={rate}"]
    command += ["-ac", str(channels), "-ar", str(rate), "-c:a", "aac"]
    subprocess.run([*command, *(["-f", "adts"] if adts else []), str(path)], check=True)
    return path


def mp4_audio(path: Path) -> tuple[bytes, int, int, list[bytes]]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        context = stream.codec_context
        packets = [bytes(packet) for packet in container.demux(stream) if packet.size]
        return bytes(context.extradata or b""), context.sample_rate, context.channels, packets


def decoded_samples(asc: bytes, frames: list[bytes]) -> tuple[int, int]:
    """(sample rate, samples) from PyAV's AAC decoder given only the ASC and raw frames."""
    decoder = av.CodecContext.create("aac", "r")
    decoder.extradata = asc
    rate, samples = 0, 0
    for frame in frames:
        for decoded in decoder.decode(av.Packet(frame)):
            rate, samples = decoded.sample_rate, samples + decoded.samples
    return rate, samples


@pytest.mark.parametrize(("rate", "channels"), [(44100, 1), (48000, 2), (16000, 2)])
def test_ffmpeg_aac_mp4_and_adts(tmp_path: Path, rate: int, channels: int) -> None:
    extradata, pyav_rate, pyav_channels, packets = mp4_audio(
        encode(tmp_path / "a.m4a", rate, channels, adts=False)
    )
    config = aac_config(extradata)
    assert config == AacConfig(extradata, rate, channels, 1024)
    assert (config.sampling_hz, config.channels) == (pyav_rate, pyav_channels)

    asc, frames = adts_to_raw(encode(tmp_path / "a.aac", rate, channels, adts=True).read_bytes())
    # FFmpeg's extradata is the 2-byte ASC and a sync extension (0x2b7, no SBR).
    assert asc == extradata[:2] and len(extradata) == 5
    assert aac_config(asc) == AacConfig(asc, rate, channels, 1024)
    assert frames == packets
    assert decoded_samples(asc, frames) == (rate, 1024 * len(frames))


def test_adts_with_crc(tmp_path: Path) -> None:
    data = encode(tmp_path / "a.aac", 44100, 1, adts=True).read_bytes()
    asc, frames = adts_to_raw(data)
    protected = b""
    for frame in frames:  # the same frames behind headers with protection_absent = 0
        fields = int.from_bytes(data[:7], "big") & ~(1 << 40) & ~(0x1FFF << 13)
        fields |= (len(frame) + 9) << 13
        protected += fields.to_bytes(7, "big") + b"\xab\xcd" + frame
    assert adts_to_raw(protected) == (asc, frames)


def test_adts_errors(tmp_path: Path) -> None:
    data = encode(tmp_path / "a.aac", 44100, 1, adts=True).read_bytes()
    first = ((data[3] & 3) << 11) | (data[4] << 3) | (data[5] >> 5)
    with pytest.raises(FormatError, match="no ADTS frame"):
        adts_to_raw(b"")
    with pytest.raises(FormatError, match="truncated"):
        adts_to_raw(data[:5])
    with pytest.raises(FormatError, match="does not fit"):
        adts_to_raw(data[: first - 1])
    with pytest.raises(FormatError, match="syncword"):
        adts_to_raw(b"\x00" + data[1:])
    blocks = bytearray(data)
    blocks[6] |= 1  # number_of_raw_data_blocks_in_frame: 2
    with pytest.raises(FormatError, match="several raw data blocks"):
        adts_to_raw(bytes(blocks))
    pce = bytearray(data)
    pce[2] &= 0xFE  # channel configuration 1 -> 0
    pce[3] &= 0x3F
    with pytest.raises(FormatError, match="program config element"):
        adts_to_raw(bytes(pce))
    other = bytearray(data[:first])
    other[2] = (other[2] & ~0x3C) | (3 << 2)  # 48 kHz
    with pytest.raises(FormatError, match="different configurations"):
        adts_to_raw(data[:first] + bytes(other))


@pytest.mark.parametrize(
    ("writer", "expected"),
    [
        (asc_bits(BitWriter(), 2, 4, 2), (44100, 2, 1024)),
        (asc_bits(BitWriter(), 2, 3, 1, frame_length=1), (48000, 1, 960)),
        (asc_bits(BitWriter(), 2, 11, 7), (8000, 8, 1024)),
        (asc_bits(BitWriter(), 1, 5, 6, core=1), (32000, 6, 1024)),
        # An explicit frequency (index 15, then 24 bits) instead of an index.
        (BitWriter().put(5, 2).put(4, 15).put(24, 37800).put(4, 1).put(3, 0), (37800, 1, 1024)),
        (he_aac_bits(BitWriter()), (24000, 2, 1024)),  # HE-AAC: the core's rate
        (he_aac_bits(BitWriter(), aot=29, channels=1), (24000, 1, 1024)),
    ],
)
def test_aac_config_fields(writer: BitWriter, expected: tuple[int, int, int]) -> None:
    asc = writer.bytes()
    assert aac_config(asc) == AacConfig(asc, *expected)


def test_he_aac_core_rate_is_half_the_decoders(tmp_path: Path) -> None:
    """PyAV's decoder, given the explicit HE-AAC config of a 24 kHz core, outputs the
    extension (SBR) rate: twice ``sampling_hz`` and twice ``frame_samples`` per frame
    (fed AAC-LC frames of a 24 kHz encode, which it upsamples)."""
    asc = he_aac_bits(BitWriter()).bytes()
    config = aac_config(asc)
    _, frames = adts_to_raw(encode(tmp_path / "a.aac", 24000, 2, adts=True).read_bytes())
    rate, samples = decoded_samples(asc, frames)
    assert (rate, samples) == (2 * config.sampling_hz, 2 * config.frame_samples * len(frames))
    assert rate == 48000


@pytest.mark.parametrize(
    ("asc", "message"),
    [
        (b"", "ends early"),
        (b"\x12", "ends early"),
        (BitWriter().put(5, 2).put(4, 4).put(4, 0).put(3, 0).bytes(), "program config element"),
        (BitWriter().put(5, 2).put(4, 13).put(4, 1).put(3, 0).bytes(), "frequency index 13"),
        (BitWriter().put(5, 2).put(4, 4).put(4, 9).put(3, 0).bytes(), "channel configuration 9"),
        # AOT 31 escapes to 32 + 6 bits: 39 (ELD) is not a GASpecificConfig type.
        (BitWriter().put(5, 31).put(6, 7).put(4, 4).put(4, 1).bytes(), "object type 39"),
        (BitWriter().put(5, 8).put(4, 4).put(4, 1).put(3, 0).bytes(), "object type 8"),
    ],
)
def test_aac_config_errors(asc: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        aac_config(asc)


def test_latm_as_ffmpeg_and_gstreamer_write_it() -> None:
    """FFmpeg's RTP muxer (-rtpflags latm) writes config=400024103fc0 for 44.1 kHz mono
    and 400024203fc0 for stereo."""
    assert latm_config(bytes.fromhex("400024103fc0")) == LatmConfig(bytes.fromhex("1208"), 1)
    assert asc_from_stream_mux_config(bytes.fromhex("400024203fc0")) == bytes.fromhex("1210")
    built = stream_mux_config(asc_bits(BitWriter(), 2, 4, 1))
    assert built == bytes.fromhex("400024103fc0")


@pytest.mark.parametrize(
    "asc",
    [
        he_aac_bits(BitWriter()),
        he_aac_bits(BitWriter(), aot=29, channels=1),
        asc_bits(BitWriter(), 2, 3, 2, frame_length=1, core=1),  # 14-bit coreCoderDelay
        asc_bits(BitWriter(), 2, 8, 1),
    ],
)
def test_latm_extracts_the_unaligned_asc(asc: BitWriter) -> None:
    config = latm_config(stream_mux_config(asc, subframes=2))
    assert config == LatmConfig(asc.bytes(), 2)
    aac_config(config.asc)  # readable by itself


def test_latm_configs_that_end_inside_frame_length_type_read_it_as_zeros() -> None:
    """GStreamer's rtpmp4apay (1.22) copies the MP4's whole ASC, with its backward-
    compatible SBR signalling (sync word 0x2b7, SBR not present), and ends the config
    there; the often quoted "40002410" stops one bit into frameLengthType."""
    gstreamer = latm_config(bytes.fromhex("40002310adca00"))
    assert gstreamer == LatmConfig(bytes.fromhex("118856e500"), 1)
    assert aac_config(gstreamer.asc).sampling_hz == 48_000
    assert latm_config(bytes.fromhex("40002410")) == LatmConfig(bytes.fromhex("1208"), 1)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (bytes.fromhex("c0002410"), "audioMuxVersion 1"),
        (BitWriter().put(1, 0).put(1, 1).put(6, 0).put(4, 1).bytes(), "program"),
        (BitWriter().put(1, 0).put(1, 1).put(6, 0).put(4, 0).put(3, 2).bytes(), "layer"),
        (
            stream_mux_config(asc_bits(BitWriter(), 2, 4, 1), frame_length_type=1),
            "frameLengthType 1",
        ),
        (bytes.fromhex("4000"), "ends early"),
        (stream_mux_config(asc_bits(BitWriter(), 2, 4, 0)), "program config element"),
    ],
)
def test_latm_errors(config: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        latm_config(config)


def test_g711_codec_private_bytes() -> None:
    assert g711_codec_private(WAVE_FORMAT_ALAW, 8000, 1) == bytes.fromhex(
        "06000100401f0000401f0000010008000000"
    )
    private = g711_codec_private(WAVE_FORMAT_MULAW, 16000, 2)
    assert struct.unpack("<HHIIHHH", private) == (7, 2, 16000, 32000, 2, 8, 0)
    with pytest.raises(ValueError, match="format tag"):
        g711_codec_private(1, 8000, 1)
    with pytest.raises(ValueError, match="rate or channels"):
        g711_codec_private(WAVE_FORMAT_ALAW, 8000, 0)


def ebml(element_id: int, payload: bytes) -> bytes:
    """An EBML element: its id, an 8-byte size, the payload."""
    size = (1 << 56) | len(payload)
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big") + size.to_bytes(8)


def g711_mkv(private: bytes, samples: bytes) -> bytes:
    def el(element_id: int, payload: bytes) -> bytes:
        return ebml(element_id, payload) + payload

    def uint(element_id: int, value: int) -> bytes:
        return el(element_id, value.to_bytes(4, "big"))

    header = el(0x1A45DFA3, el(0x4282, b"matroska") + uint(0x4287, 2) + uint(0x4285, 2))
    info = el(0x1549A966, uint(0x2AD7B1, 1_000_000))
    audio = el(0xE1, el(0xB5, struct.pack(">d", 8000.0)) + uint(0x9F, 1))
    track = uint(0xD7, 1) + uint(0x73C5, 1) + uint(0x83, 2) + el(0x86, b"A_MS/ACM")
    tracks = el(0x1654AE6B, el(0xAE, track + el(0x63A2, private) + audio))
    block = el(0xA3, b"\x81\x00\x00\x80" + samples)
    cluster = el(0x1F43B675, uint(0xE7, 0) + block)
    return header + el(0x18538067, info + tracks + cluster)


@pytest.mark.parametrize(
    ("tag", "codec"), [(WAVE_FORMAT_ALAW, "pcm_alaw"), (WAVE_FORMAT_MULAW, "pcm_mulaw")]
)
def test_g711_track_decodes(tmp_path: Path, tag: int, codec: str) -> None:
    path = tmp_path / "g711.mkv"
    path.write_bytes(g711_mkv(g711_codec_private(tag, 8000, 1), b"\xd5" * 160))
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == codec
        assert (stream.codec_context.sample_rate, stream.codec_context.channels) == (8000, 1)
        assert sum(frame.samples for frame in container.decode(stream)) == 160
