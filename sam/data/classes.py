"""The sound-event taxonomy of the embedded corpus: which class each Debian clip belongs to.

Rules map a clip's origin (folder and file name inside its package, or OpenSFX's human caption) to
sound-event labels, a noun phrase for captions ("footsteps on gravel") and a broad source group
(for "what kind of source" questions). Clips no rule claims keep no label; `AMBIENCE` rules mark
quiet atmospheres that the scene composer may use as unlabeled background.

This module holds data and pure string functions only: it must never read audio or touch disk.
"""

from __future__ import annotations

import re

# Broad source group of every class (MMAU's "Acoustic Source Inference" asks for these).
CLASS_GROUPS: dict[str, str] = {
    "footsteps": "a person moving",
    "woman screaming": "a human voice",
    "man screaming": "a human voice",
    "speech": "a human voice",
    "monster growl": "a creature",
    "animal": "an animal",
    "fire": "nature",
    "water": "nature",
    "wind": "nature",
    "thunder": "nature",
    "gunshot": "a weapon",
    "laser shot": "a weapon",
    "explosion": "a weapon",
    "gun reload": "a weapon",
    "impact": "an object",
    "glass breaking": "an object",
    "wood breaking": "an object",
    "door": "an object",
    "whoosh": "an object",
    "engine": "a vehicle",
    "aircraft": "a vehicle",
    "train": "a vehicle",
    "horn": "a vehicle",
    "machinery": "a machine",
    "electric sparks": "a machine",
    "robot": "a machine",
    "click": "an electronic device",
    "beep": "an electronic device",
    "drums": "a musical instrument",
    "kick drum": "a musical instrument",
    "snare drum": "a musical instrument",
    "hi-hat": "a musical instrument",
    "cymbal": "a musical instrument",
    "tom drum": "a musical instrument",
    "keyboard typing": "an electronic device",
    "tabla": "a musical instrument",
    "bass": "a musical instrument",
    "synth blip": "a musical instrument",
    "bell": "a musical instrument",
    "music": "a musical instrument",
}

AMBIENCE = "ambience"  # pseudo-label: background-only clip, never an event label

# (regex on "folder/name" inside the ufoai zip, labels, phrase). First match wins; "{1}" is group 1.
_WORDS = {"open": "opening", "close": "closing"}  # "{1}" captures that need rewording
UFOAI_RULES: list[tuple[str, list[str], str]] = [
    (r"footsteps/(splash|water_in|water_out)\d*$", ["footsteps"], "footsteps splashing through water"),
    (r"footsteps/water_under$", ["water"], "water gurgling"),
    (r"footsteps/hitground\d*$", ["impact"], "a body hitting the ground"),
    (r"footsteps/(crouch|stand)$", ["footsteps"], "someone shuffling their feet"),
    (r"footsteps/([a-z]+?)\d*$", ["footsteps"], "footsteps on {1}"),
    (r"ambience/(fire\d*|smallfire|firesoft)$", ["fire"], "a crackling fire"),
    (r"weapons/flamer-\w+$", ["fire"], "a roaring flamethrower"),
    (r"ambience/(water\d*|waterfontain)$", ["water"], "running water"),
    (r"ambience/alienbase-bubbles$", ["water"], "bubbling liquid"),
    (r"ambience/thunder\d*$", ["thunder"], "thunder"),
    (r"ambience/arcticwind$", ["wind"], "howling wind"),
    (r"ambience/cricket_loop$", ["animal"], "crickets chirping"),
    (
        r"ambience/(alienmachinery\d*|alienpowermachinery\d*|machine1|minepump03|alien-generator|alien-device"
        r"|alien-ventilation|wind_turbine|steam|engine_alien_\w+|alien_engine)$",
        ["machinery"],
        "machinery humming",
    ),
    (r"ambience/(sparks|sparks_short)$", ["electric sparks"], "electric sparks crackling"),
    (r"misc/(breakelectric\d*|electro)$", ["electric sparks"], "electric sparks crackling"),
    (r"weapons/electro-taser\w*$", ["electric sparks"], "an electric taser zapping"),
    (r"ambience/(disco|jingle\d*)$", ["music"], "a short piece of music"),
    (
        r"ambience/(hum\d*|droning_\w+|alienatmo|ufo_night_atm|city_abnd_ufoai_atm|sand-city|lights_loop"
        r"|alienwormhole|alienenergy\d*|aliencom|tv_static)$",
        [AMBIENCE],
        "a low ambient hum",
    ),
    (r"ambience/bloodspiderwalk$", ["monster growl"], "a creature scuttling"),
    (r"(ambience/creak|doors/creak\w*)$", ["door"], "a door creaking"),
    (r"doors/door\d-(open|close)$", ["door"], "a door {1}"),
    (r"doors/open_close$", ["door"], "a door opening and closing"),
    (r"(civilians|soldiers)/(civ)?fem\w+$", ["woman screaming"], "a woman crying out in pain"),
    (r"(civilians|soldiers)/(civ)?male\w+$", ["man screaming"], "a man crying out in pain"),
    (r"aliens/\w+/(attack|move\d*)$", ["monster growl"], "a creature growling"),
    (r"aliens/\w+/(die|hurt)\d*$", ["monster growl"], "a creature shrieking"),
    (r"weapons/bullet-\w+-\d+x$", ["gunshot"], "a burst of gunfire"),
    (r"weapons/(bullet-\w+|grenade-launcher(-\d+x)?|ugv-cannon-fire)$", ["gunshot"], "a gunshot"),
    (r"geoscape/combat-gun$", ["gunshot"], "a burst of gunfire"),
    (r"weapons/explosion\w*(-\w+)?$", ["explosion"], "an explosion"),
    (r"geoscape/(combat-explosion|combat-rocket-exp)$", ["explosion"], "an explosion"),
    (r"weapons/(laser-\w+|plasma-(small|medium|large|huge|hoverheavy)|ptl-\w+|ugv-lasercannon-fire)$", ["laser shot"], "a laser blast"),
    (r"geoscape/combat-air(laser|plasma)[\w-]*$", ["laser shot"], "a laser blast"),
    (r"weapons/(reload-\w+|grenade-pin)$", ["gun reload"], "a gun being reloaded"),
    (r"weapons/(melee-\w+)$", ["whoosh"], "a swoosh through the air"),
    (r"seq/sword-fly$", ["whoosh"], "a swoosh through the air"),
    (r"(impact/[\w-]+|weapons/grenade-bounce|seq/sword-hit)$", ["impact"], "an object hitting a surface"),
    (r"misc/breakglass\d*$", ["glass breaking"], "glass shattering"),
    (r"misc/breakwood\d*$", ["wood breaking"], "wood splintering"),
    (r"misc/breakmetal\d*$", ["impact"], "metal crashing"),
    (r"ugv/diesel-(idle|move|stop)$", ["engine"], "a diesel engine"),
    (r"ugv/hover-(idle|move|stop)$", ["machinery"], "a hovering machine humming"),
    (r"seq/(alien|human)flyby$", ["aircraft"], "an aircraft flying past"),
    (r"ui/(click\w*|item-drag|item-drop)$", ["click"], "a click"),
    (r"ui/beep\d*$", ["beep"], "a short beep"),
    (
        r"geoscape/(basealert|ufospotted|newmission|info|mail|promotion|standard|ufolost|build-place|alien-activity)$",
        ["beep"],
        "an electronic alert tone",
    ),
    (r"misc/(popup|lobbyprivmsg|roundstart)$", ["beep"], "an electronic alert tone"),
]

# (regex on the OpenSFX caption title, labels). The human caption itself is the phrase.
OPENSFX_RULES: list[tuple[str, list[str]]] = [
    (r"^unused", []),
    (r"^(good|bad) year$", ["music"]),
    (r"truck/old bus start, pull away with horn", ["engine", "horn"]),
    (r"(ship|ferry|car) horn|factory whistle", ["horn"]),
    (r"train station departure|steam engine going in tunnel", ["train"]),
    (r"level crossing", ["bell"]),
    (r"plane|jet take off|helicopter", ["aircraft"]),
    (r"(bus|truck)( start|/old bus start)", ["engine"]),
    (r"mining machinery|jackhammer|sawmill|building bridge|chainsaw|steam \(of steam engine\)", ["machinery"]),
    (r"falling tree|crashing tree", ["wood breaking"]),
    (r"crash|breakdown|splat", ["impact"]),
    (r"^explosion$", ["explosion"]),
    (r"^(beep|morse)$", ["beep"]),
    (r"^(sheep|cow|horse|bird|lion roar|monkeys)", ["animal"]),
    (r"bubble|plastic mine", ["water"]),
    (r"wind$", ["wind"]),
    (r"electric sparking", ["electric sparks"]),
]

# (regex on the sonic-pi sample name, labels, phrase).
SONICPI_RULES: list[tuple[str, list[str], str]] = [
    (r"^(bd_\w+|drum_bass_\w+|drum_heavy_kick|elec_soft_kick|elec_hollow_kick)$", ["kick drum", "drums"], "a kick drum hit"),
    (r"^(sn_\w+|drum_snare_\w+|elec_\w*snare)$", ["snare drum", "drums"], "a snare drum"),
    (r"^drum_roll$", ["drums"], "a drum roll"),
    (r"^drum_cymbal_(closed|pedal|open)$", ["hi-hat", "drums"], "a hi-hat"),
    (r"^(drum_cymbal_\w+|drum_splash_\w+|elec_cymbal)$", ["cymbal", "drums"], "a cymbal crash"),
    (r"^(drum_tom_\w+|elec_fuzz_tom)$", ["tom drum", "drums"], "a tom drum hit"),
    (r"^(tabla_\w+|loop_tabla)$", ["tabla"], "a tabla"),
    (r"^(bass_\w+|glitch_bass_g)$", ["bass"], "a deep bass note"),
    (r"^loop_(amen\w*|breakbeat|compus|garzul|mika|perc\d|safari|industrial|electric|mehackit\d|weirdo)$", ["drums"], "a drum beat"),
    (r"^loop_3d_printer$", ["machinery"], "a machine whirring"),
    (r"^(elec_(bell|chime|bong|triangle)|perc_bell\d*|drum_cowbell)$", ["bell"], "a bell ringing"),
    (r"^(elec_\w+|glitch_perc\d)$", ["synth blip"], "a synthetic blip"),
    (r"^(glitch_robot\d|mehackit_robot\d)$", ["robot"], "a robotic voice"),
    (r"^mehackit_phone\d$", ["beep"], "an electronic phone beep"),
    (r"^(ambi_piano|ambi_choir)$", ["music"], "a short piece of music"),
    (r"^(ambi_swoosh|ambi_dark_woosh|perc_swash|perc_swoosh)$", ["whoosh"], "a whoosh"),
    (r"^(ambi_\w+|loop_drone_\w+|vinyl_hiss)$", [AMBIENCE], "a soft ambient drone"),
    (r"^misc_cineboom$", ["explosion"], "a deep boom"),
    (r"^misc_crow$", ["animal"], "a crow cawing"),
    (r"^perc_door$", ["door"], "a door knock"),
    (r"^perc_impact\d$", ["impact"], "a heavy impact"),
]

_UNCOUNTABLE = re.compile(
    r"^(wind|heavy wind|applause|steam|mining machinery|morse|electric sparking|sheep|monkeys|"
    r"jackhammer|sawmill|building bridge)"
)


def _match(rules: list, key: str) -> tuple[list[str], str] | None:
    for rule in rules:
        m = re.search(rule[0], key)
        if m:
            phrase = rule[2] if len(rule) > 2 else ""
            if "{1}" in phrase:
                phrase = phrase.replace("{1}", _WORDS.get(m.group(1), m.group(1)))
            return list(rule[1]), phrase
    return None


def classify_ufoai(key: str) -> tuple[list[str], str]:
    """Labels and phrase of a ufoai clip from its path inside the zip, e.g. ``sound/footsteps/gravel1``."""
    key = key.removeprefix("sound/")
    return _match(UFOAI_RULES, key) or ([], key.rsplit("/", 1)[-1].replace("_", " "))


def classify_sonicpi(name: str) -> tuple[list[str], str]:
    """Labels and phrase of a sonic-pi sample from its file stem, e.g. ``tabla_na``."""
    return _match(SONICPI_RULES, name) or ([], name.replace("_", " "))


def opensfx_title(caption: str) -> str:
    """The quoted title of an OpenSFX caption, without game-world prefixes or numbering."""
    m = re.match(r'\s*"([^"]*)"', caption)
    title = m.group(1) if m else caption.split(".")[0]
    title = re.sub(r"^(Toyland|Tropical|Lumber mill):\s*", "", title)
    title = re.sub(r"\s*\(\d+\)$", "", title)
    return title.split(" | ")[0].strip()


def classify_opensfx(caption: str) -> tuple[list[str], str]:
    """Labels and phrase of an OpenSFX clip from its human caption (the phrase is the caption's title)."""
    title = opensfx_title(caption)
    low = title.lower()
    labels = next((list(lab) for pat, lab in OPENSFX_RULES if re.search(pat, low)), [])
    phrase = low if _UNCOUNTABLE.match(low) else ("an " if low[:1] in "aeiou" else "a ") + low
    return labels, phrase


def classify_speech(transcript: str, language: str = "English", speaker: str = "woman") -> tuple[list[str], str]:
    """Asterisk prompts: spoken text is speech in the prompt set's language; bracketed transcripts
    (``[beep tone]``) are tones."""
    if transcript.startswith("["):
        return ["beep"], "an electronic tone"
    return [f"{language} speech"], f'a {speaker} saying "{transcript}"'


def is_speech(label: str) -> bool:
    """Speech classes: one per language ("English speech", "Spanish speech", ...)."""
    return label == "speech" or label.endswith(" speech")


# Asterisk prompt voices: the folder name says language, region and sex (``es_MX_f_Allison``).
LANGUAGES = {"en": "English", "es": "Spanish", "fr": "French", "it": "Italian", "ru": "Russian"}
SPEAKERS = {"f": "woman", "m": "man"}

# (regex on a fillets-ng sound path "folder/name", labels, phrase). Most fillets sounds carry Czech
# nicknames (``bar-x-suckano``) that say too little to label them: they are reported and skipped.
FILLETS_RULES: list[tuple[str, list[str], str]] = [
    (r"^linux/(key|enter|space)\d+$", ["keyboard typing"], "a key being typed on a keyboard"),
    (r"^share/sp-bubles_\d+$", ["water"], "bubbles in water"),
    (r"^share/sp-impact_(light|heavy)_\d+$", ["impact"], "an object hitting a surface"),
    (r"^keys/unlocking-\d+$", ["click"], "a key turning in a lock"),
]

# (regex on a General MIDI soundfont preset name, class, phrase, lowest note, highest note). The
# class is the instrument the preset's samples were recorded from (or the synthesizer it imitates);
# presets no rule claims (sound effects, synth effects, "Tinker Bell") are reported and skipped.
INSTRUMENT_RULES: list[tuple[str, str, str, int, int]] = [
    (r"^(yamaha grand piano|bright yamaha grand|honky tonk)$", "piano", "a piano", 33, 96),
    (r"^(electric piano|rhodes ep|legend ep 2|detuned ep [12])$", "electric piano", "an electric piano", 36, 96),
    (r"harpsichord", "harpsichord", "a harpsichord", 36, 89),
    (r"^clavinet$", "clavinet", "a clavinet", 36, 89),
    (r"^celesta$", "celesta", "a celesta", 60, 108),
    (r"^glockenspiel$", "glockenspiel", "a glockenspiel", 72, 108),
    (r"^music box$", "music box", "a music box", 60, 96),
    (r"^vibraphone$", "vibraphone", "a vibraphone", 53, 89),
    (r"^marimba$", "marimba", "a marimba", 45, 96),
    (r"^xylophone$", "xylophone", "a xylophone", 65, 108),
    (r"^(tubular bells|church bell)$", "bell", "a bell", 55, 84),
    (r"^dulcimer$", "dulcimer", "a dulcimer", 55, 91),
    (r"^(drawbarorgan|percussive organ|rock organ|detuned organ [12]|reed organ)$", "organ", "an organ", 36, 96),
    (r"^church organ( 2)?$", "church organ", "a church organ", 36, 96),
    (r"^(accordian|bandoneon|italian accordion)$", "accordion", "an accordion", 48, 84),
    (r"^harmonica$", "harmonica", "a harmonica", 60, 84),
    (r"^(nylon string guitar|steel string guitar|12 string guitar)$", "acoustic guitar", "an acoustic guitar", 40, 84),
    (r"^(jazz guitar|clean guitar|palm muted guitar|funk guitar)$", "electric guitar", "an electric guitar", 40, 84),
    (r"^(overdrive guitar|distortion guitar)$", "distorted guitar", "a distorted electric guitar", 40, 84),
    (r"^ukulele$", "ukulele", "a ukulele", 60, 84),
    (r"^mandolin$", "mandolin", "a mandolin", 55, 88),
    (r"^(acoustic bass|fingered bass|picked bass|fretless bass|slap bass|pop bass)$", "bass guitar", "a bass guitar", 28, 60),
    (r"^synth bass [1-4]$", "synth bass", "a synth bass", 28, 60),
    (r"^(violin|slow violin|fiddle)$", "violin", "a violin", 55, 93),
    (r"^viola$", "viola", "a viola", 48, 88),
    (r"^cello$", "cello", "a cello", 36, 76),
    (r"^contrabass$", "double bass", "a double bass", 28, 55),
    (r"^pizzicato section$", "pizzicato strings", "plucked strings", 36, 84),
    (r"^harp$", "harp", "a harp", 36, 96),
    (r"^timpani$", "timpani", "timpani", 40, 60),
    (r"^(strings|slow strings|tremolo|orchestral pad)$", "string ensemble", "a string ensemble", 36, 96),
    (
        r"^(synth strings [1-3]|fantasia|warm pad|polysynth|space voice|bowed glass|metal pad|halo pad|sweep pad)$",
        "synth pad",
        "a synthesizer pad",
        36,
        84,
    ),
    (r"^(ahh choir|ohh voices)$", "choir", "a choir singing", 48, 79),
    (r"^(trumpet|muted trumpet)$", "trumpet", "a trumpet", 55, 82),
    (r"^trombone$", "trombone", "a trombone", 40, 72),
    (r"^tuba$", "tuba", "a tuba", 28, 55),
    (r"^french horns$", "french horn", "a french horn", 41, 77),
    (r"^(brass section|brass 2)$", "brass section", "a brass section", 48, 80),
    (r"^synth brass [1-4]$", "synth brass", "synthesizer brass", 36, 84),
    (r"^(soprano|alto|tenor|baritone) sax$", "saxophone", "a saxophone", 44, 74),
    (r"^oboe$", "oboe", "an oboe", 58, 91),
    (r"^english horn$", "english horn", "an english horn", 52, 81),
    (r"^bassoon$", "bassoon", "a bassoon", 34, 72),
    (r"^clarinet$", "clarinet", "a clarinet", 50, 91),
    (r"^piccolo$", "piccolo", "a piccolo", 74, 108),
    (r"^flute$", "flute", "a flute", 60, 96),
    (r"^recorder$", "recorder", "a recorder", 60, 96),
    (r"^pan flute$", "pan flute", "a pan flute", 60, 96),
    (r"^shakuhachi$", "shakuhachi", "a shakuhachi", 55, 90),
    (r"^whistle$", "whistle", "a whistle", 60, 96),
    (r"^ocarina$", "ocarina", "an ocarina", 60, 90),
    (
        r"^(square lead|saw wave|calliope lead|chiffer lead|charang|fifth sawtooth wave|bass & lead|sine wave)$",
        "synth lead",
        "a synthesizer lead",
        48,
        96,
    ),
    (r"^sitar$", "sitar", "a sitar", 48, 77),
    (r"^banjo$", "banjo", "a banjo", 48, 84),
    (r"^shamisen$", "shamisen", "a shamisen", 50, 79),
    (r"^(koto|taisho koto)$", "koto", "a koto", 55, 84),
    (r"^kalimba$", "kalimba", "a kalimba", 60, 84),
    (r"^bagpipe$", "bagpipe", "a bagpipe", 60, 77),
    (r"^shenai$", "shehnai", "a shehnai", 60, 84),
    (r"^steel drums$", "steel drums", "steel drums", 52, 76),
    (r"^taiko drum$", "taiko drum", "a taiko drum", 36, 60),
    (r"^(melodic tom|melo tom 2)$", "tom drum", "a tom drum", 40, 64),
]

# General MIDI percussion key map (the note numbers the avldrums kits follow): note -> class, phrase.
DRUM_NOTES: dict[int, tuple[str, str]] = {
    36: ("kick drum", "a kick drum hit"),
    38: ("snare drum", "a snare drum"),
    40: ("snare drum", "a snare drum"),
    37: ("snare drum", "a snare rim click"),
    42: ("hi-hat", "a closed hi-hat"),
    44: ("hi-hat", "a pedal hi-hat"),
    46: ("hi-hat", "an open hi-hat"),
    41: ("tom drum", "a floor tom"),
    43: ("tom drum", "a floor tom"),
    45: ("tom drum", "a low tom"),
    47: ("tom drum", "a mid tom"),
    48: ("tom drum", "a high tom"),
    50: ("tom drum", "a high tom"),
    49: ("cymbal", "a crash cymbal"),
    57: ("cymbal", "a crash cymbal"),
    51: ("cymbal", "a ride cymbal"),
    59: ("cymbal", "a ride cymbal"),
    53: ("cymbal", "a ride cymbal bell"),
    55: ("cymbal", "a splash cymbal"),
    52: ("cymbal", "a china cymbal"),
}


def classify_fillets(key: str) -> tuple[list[str], str]:
    """Labels and phrase of a fillets-ng sound from ``folder/name`` (language folder removed)."""
    return _match(FILLETS_RULES, key) or ([], key.rsplit("/", 1)[-1])


def classify_instrument(preset: str) -> tuple[str, str, int, int] | None:
    """(class, phrase, lowest note, highest note) of a soundfont preset name, or None (no rule: skip it)."""
    low = preset.strip().lower()
    return next(((cls, phrase, lo, hi) for pat, cls, phrase, lo, hi in INSTRUMENT_RULES if re.search(pat, low)), None)


CLASS_GROUPS.update({cls: "a musical instrument" for _, cls, *_ in INSTRUMENT_RULES})
CLASS_GROUPS["choir"] = "a human voice"
CLASS_GROUPS.update({f"{lang} speech": "a human voice" for lang in LANGUAGES.values()})
