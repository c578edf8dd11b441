"""Class names of the suite's larger datasets, each list in its dataset's own label order.

Facts, not code: the CLIP paper's names (OpenAI CLIP ``data/prompts.md``, which lists the
names used for the paper's zero-shot scores) reordered to the label order of the tfds builder
named in :mod:`clip_jax.evaluate.registry` where the paper's list is ordered differently (SUN397:
``jail cell`` / ``jail indoor``; Food-101: ``cheesecake`` / ``cheese plate``; Oxford Pets: the
paper lists cats then dogs, tfds interleaves them alphabetically; Caltech-101: the paper puts
its faces / background classes first, tfds sorts its folder names, so ``Faces`` is
``off-center face`` and ``Faces_easy`` ``centered face``, as CLIP_benchmark's ``caltech101_vtab``
list also has them). Flowers-102 keeps the paper's names at tfds's indices (tfds calls index 59
``pink-yellow dahlia?``, index 92 ``ball moss`` where the paper says ``air plant``: the label
file has numbers only). Folder-only sets (FGVC Aircraft variants, GTSRB, Country211) keep the
paper's order, which is their folders' sorted order (GTSRB ``00000``..``00042``; Country211's
ISO codes). ``IMAGENET_A_WNIDS`` / ``IMAGENET_R_WNIDS``: the 200 ImageNet classes of ImageNet-A
and ImageNet-R (their readme's lists, as CLIP_benchmark has them).
"""

CLASSNAMES = {
    "food101": (
    "apple pie", "baby back ribs", "baklava", "beef carpaccio", "beef tartare", "beet salad",
    "beignets", "bibimbap", "bread pudding", "breakfast burrito", "bruschetta", "caesar salad",
    "cannoli", "caprese salad", "carrot cake", "ceviche", "cheesecake", "cheese plate",
    "chicken curry", "chicken quesadilla", "chicken wings", "chocolate cake", "chocolate mousse",
    "churros", "clam chowder", "club sandwich", "crab cakes", "creme brulee", "croque madame",
    "cup cakes", "deviled eggs", "donuts", "dumplings", "edamame", "eggs benedict", "escargots",
    "falafel", "filet mignon", "fish and chips", "foie gras", "french fries", "french onion soup",
    "french toast", "fried calamari", "fried rice", "frozen yogurt", "garlic bread", "gnocchi",
    "greek salad", "grilled cheese sandwich", "grilled salmon", "guacamole", "gyoza", "hamburger",
    "hot and sour soup", "hot dog", "huevos rancheros", "hummus", "ice cream", "lasagna",
    "lobster bisque", "lobster roll sandwich", "macaroni and cheese", "macarons", "miso soup",
    "mussels", "nachos", "omelette", "onion rings", "oysters", "pad thai", "paella", "pancakes",
    "panna cotta", "peking duck", "pho", "pizza", "pork chop", "poutine", "prime rib",
    "pulled pork sandwich", "ramen", "ravioli", "red velvet cake", "risotto", "samosa", "sashimi",
    "scallops", "seaweed salad", "shrimp and grits", "spaghetti bolognese", "spaghetti carbonara",
    "spring rolls", "steak", "strawberry shortcake", "sushi", "tacos", "takoyaki", "tiramisu",
    "tuna tartare", "waffles",
    ),
    "sun397": (
    "abbey", "airplane cabin", "airport terminal", "alley", "amphitheater", "amusement arcade",
    "amusement park", "anechoic chamber", "apartment building outdoor", "apse indoor", "aquarium",
    "aqueduct", "arch", "archive", "arrival gate outdoor", "art gallery", "art school",
    "art studio", "assembly line", "athletic field outdoor", "atrium public", "attic",
    "auditorium", "auto factory", "badlands", "badminton court indoor", "baggage claim",
    "bakery shop", "balcony exterior", "balcony interior", "ball pit", "ballroom", "bamboo forest",
    "banquet hall", "bar", "barn", "barndoor", "baseball field", "basement", "basilica",
    "basketball court outdoor", "bathroom", "batters box", "bayou", "bazaar indoor",
    "bazaar outdoor", "beach", "beauty salon", "bedroom", "berth", "biology laboratory",
    "bistro indoor", "boardwalk", "boat deck", "boathouse", "bookstore", "booth indoor",
    "botanical garden", "bow window indoor", "bow window outdoor", "bowling alley", "boxing ring",
    "brewery indoor", "bridge", "building facade", "bullring", "burial chamber", "bus interior",
    "butchers shop", "butte", "cabin outdoor", "cafeteria", "campsite", "campus", "canal natural",
    "canal urban", "candy store", "canyon", "car interior backseat", "car interior frontseat",
    "carrousel", "casino indoor", "castle", "catacomb", "cathedral indoor", "cathedral outdoor",
    "cavern indoor", "cemetery", "chalet", "cheese factory", "chemistry lab",
    "chicken coop indoor", "chicken coop outdoor", "childs room", "church indoor",
    "church outdoor", "classroom", "clean room", "cliff", "cloister indoor", "closet",
    "clothing store", "coast", "cockpit", "coffee shop", "computer room", "conference center",
    "conference room", "construction site", "control room", "control tower outdoor", "corn field",
    "corral", "corridor", "cottage garden", "courthouse", "courtroom", "courtyard",
    "covered bridge exterior", "creek", "crevasse", "crosswalk", "cubicle office", "dam",
    "delicatessen", "dentists office", "desert sand", "desert vegetation", "diner indoor",
    "diner outdoor", "dinette home", "dinette vehicle", "dining car", "dining room", "discotheque",
    "dock", "doorway outdoor", "dorm room", "driveway", "driving range outdoor", "drugstore",
    "electrical substation", "elevator door", "elevator interior", "elevator shaft", "engine room",
    "escalator indoor", "excavation", "factory indoor", "fairway", "fastfood restaurant",
    "field cultivated", "field wild", "fire escape", "fire station", "firing range indoor",
    "fishpond", "florist shop indoor", "food court", "forest broadleaf", "forest needleleaf",
    "forest path", "forest road", "formal garden", "fountain", "galley", "game room",
    "garage indoor", "garbage dump", "gas station", "gazebo exterior", "general store indoor",
    "general store outdoor", "gift shop", "golf course", "greenhouse indoor", "greenhouse outdoor",
    "gymnasium indoor", "hangar indoor", "hangar outdoor", "harbor", "hayfield", "heliport",
    "herb garden", "highway", "hill", "home office", "hospital", "hospital room", "hot spring",
    "hot tub outdoor", "hotel outdoor", "hotel room", "house", "hunting lodge outdoor",
    "ice cream parlor", "ice floe", "ice shelf", "ice skating rink indoor",
    "ice skating rink outdoor", "iceberg", "igloo", "industrial area", "inn outdoor", "islet",
    "jacuzzi indoor", "jail indoor", "jail cell", "jewelry shop", "kasbah", "kennel indoor",
    "kennel outdoor", "kindergarden classroom", "kitchen", "kitchenette", "labyrinth outdoor",
    "lake natural", "landfill", "landing deck", "laundromat", "lecture room", "library indoor",
    "library outdoor", "lido deck outdoor", "lift bridge", "lighthouse", "limousine interior",
    "living room", "lobby", "lock chamber", "locker room", "mansion", "manufactured home",
    "market indoor", "market outdoor", "marsh", "martial arts gym", "mausoleum", "medina",
    "moat water", "monastery outdoor", "mosque indoor", "mosque outdoor", "motel", "mountain",
    "mountain snowy", "movie theater indoor", "museum indoor", "music store", "music studio",
    "nuclear power plant outdoor", "nursery", "oast house", "observatory outdoor", "ocean",
    "office", "office building", "oil refinery outdoor", "oilrig", "operating room", "orchard",
    "outhouse outdoor", "pagoda", "palace", "pantry", "park", "parking garage indoor",
    "parking garage outdoor", "parking lot", "parlor", "pasture", "patio", "pavilion", "pharmacy",
    "phone booth", "physics laboratory", "picnic area", "pilothouse indoor", "planetarium outdoor",
    "playground", "playroom", "plaza", "podium indoor", "podium outdoor", "pond",
    "poolroom establishment", "poolroom home", "power plant outdoor", "promenade deck",
    "pub indoor", "pulpit", "putting green", "racecourse", "raceway", "raft", "railroad track",
    "rainforest", "reception", "recreation room", "residential neighborhood", "restaurant",
    "restaurant kitchen", "restaurant patio", "rice paddy", "riding arena", "river", "rock arch",
    "rope bridge", "ruin", "runway", "sandbar", "sandbox", "sauna", "schoolhouse", "sea cliff",
    "server room", "shed", "shoe shop", "shopfront", "shopping mall indoor", "shower", "skatepark",
    "ski lodge", "ski resort", "ski slope", "sky", "skyscraper", "slum", "snowfield",
    "squash court", "stable", "stadium baseball", "stadium football", "stage indoor", "staircase",
    "street", "subway interior", "subway station platform", "supermarket", "sushi bar", "swamp",
    "swimming pool indoor", "swimming pool outdoor", "synagogue indoor", "synagogue outdoor",
    "television studio", "temple east asia", "temple south asia", "tennis court indoor",
    "tennis court outdoor", "tent outdoor", "theater indoor procenium", "theater indoor seats",
    "thriftshop", "throne room", "ticket booth", "toll plaza", "topiary garden", "tower",
    "toyshop", "track outdoor", "train railway", "train station platform", "tree farm",
    "tree house", "trench", "underwater coral reef", "utility room", "valley", "van interior",
    "vegetable garden", "veranda", "veterinarians office", "viaduct", "videostore", "village",
    "vineyard", "volcano", "volleyball court indoor", "volleyball court outdoor", "waiting room",
    "warehouse indoor", "water tower", "waterfall block", "waterfall fan", "waterfall plunge",
    "watering hole", "wave", "wet bar", "wheat field", "wind farm", "windmill",
    "wine cellar barrel storage", "wine cellar bottle storage", "wrestling ring indoor", "yard",
    "youth hostel",
    ),
    "cars": (
    "AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012",
    "Acura TL Type-S 2008", "Acura TSX Sedan 2012", "Acura Integra Type R 2001",
    "Acura ZDX Hatchback 2012", "Aston Martin V8 Vantage Convertible 2012",
    "Aston Martin V8 Vantage Coupe 2012", "Aston Martin Virage Convertible 2012",
    "Aston Martin Virage Coupe 2012", "Audi RS 4 Convertible 2008", "Audi A5 Coupe 2012",
    "Audi TTS Coupe 2012", "Audi R8 Coupe 2012", "Audi V8 Sedan 1994", "Audi 100 Sedan 1994",
    "Audi 100 Wagon 1994", "Audi TT Hatchback 2011", "Audi S6 Sedan 2011",
    "Audi S5 Convertible 2012", "Audi S5 Coupe 2012", "Audi S4 Sedan 2012", "Audi S4 Sedan 2007",
    "Audi TT RS Coupe 2012", "BMW ActiveHybrid 5 Sedan 2012", "BMW 1 Series Convertible 2012",
    "BMW 1 Series Coupe 2012", "BMW 3 Series Sedan 2012", "BMW 3 Series Wagon 2012",
    "BMW 6 Series Convertible 2007", "BMW X5 SUV 2007", "BMW X6 SUV 2012", "BMW M3 Coupe 2012",
    "BMW M5 Sedan 2010", "BMW M6 Convertible 2010", "BMW X3 SUV 2012", "BMW Z4 Convertible 2012",
    "Bentley Continental Supersports Conv. Convertible 2012", "Bentley Arnage Sedan 2009",
    "Bentley Mulsanne Sedan 2011", "Bentley Continental GT Coupe 2012",
    "Bentley Continental GT Coupe 2007", "Bentley Continental Flying Spur Sedan 2007",
    "Bugatti Veyron 16.4 Convertible 2009", "Bugatti Veyron 16.4 Coupe 2009",
    "Buick Regal GS 2012", "Buick Rainier SUV 2007", "Buick Verano Sedan 2012",
    "Buick Enclave SUV 2012", "Cadillac CTS-V Sedan 2012", "Cadillac SRX SUV 2012",
    "Cadillac Escalade EXT Crew Cab 2007", "Chevrolet Silverado 1500 Hybrid Crew Cab 2012",
    "Chevrolet Corvette Convertible 2012", "Chevrolet Corvette ZR1 2012",
    "Chevrolet Corvette Ron Fellows Edition Z06 2007", "Chevrolet Traverse SUV 2012",
    "Chevrolet Camaro Convertible 2012", "Chevrolet HHR SS 2010", "Chevrolet Impala Sedan 2007",
    "Chevrolet Tahoe Hybrid SUV 2012", "Chevrolet Sonic Sedan 2012",
    "Chevrolet Express Cargo Van 2007", "Chevrolet Avalanche Crew Cab 2012",
    "Chevrolet Cobalt SS 2010", "Chevrolet Malibu Hybrid Sedan 2010",
    "Chevrolet TrailBlazer SS 2009", "Chevrolet Silverado 2500HD Regular Cab 2012",
    "Chevrolet Silverado 1500 Classic Extended Cab 2007", "Chevrolet Express Van 2007",
    "Chevrolet Monte Carlo Coupe 2007", "Chevrolet Malibu Sedan 2007",
    "Chevrolet Silverado 1500 Extended Cab 2012", "Chevrolet Silverado 1500 Regular Cab 2012",
    "Chrysler Aspen SUV 2009", "Chrysler Sebring Convertible 2010",
    "Chrysler Town and Country Minivan 2012", "Chrysler 300 SRT-8 2010",
    "Chrysler Crossfire Convertible 2008", "Chrysler PT Cruiser Convertible 2008",
    "Daewoo Nubira Wagon 2002", "Dodge Caliber Wagon 2012", "Dodge Caliber Wagon 2007",
    "Dodge Caravan Minivan 1997", "Dodge Ram Pickup 3500 Crew Cab 2010",
    "Dodge Ram Pickup 3500 Quad Cab 2009", "Dodge Sprinter Cargo Van 2009",
    "Dodge Journey SUV 2012", "Dodge Dakota Crew Cab 2010", "Dodge Dakota Club Cab 2007",
    "Dodge Magnum Wagon 2008", "Dodge Challenger SRT8 2011", "Dodge Durango SUV 2012",
    "Dodge Durango SUV 2007", "Dodge Charger Sedan 2012", "Dodge Charger SRT-8 2009",
    "Eagle Talon Hatchback 1998", "FIAT 500 Abarth 2012", "FIAT 500 Convertible 2012",
    "Ferrari FF Coupe 2012", "Ferrari California Convertible 2012",
    "Ferrari 458 Italia Convertible 2012", "Ferrari 458 Italia Coupe 2012",
    "Fisker Karma Sedan 2012", "Ford F-450 Super Duty Crew Cab 2012",
    "Ford Mustang Convertible 2007", "Ford Freestar Minivan 2007", "Ford Expedition EL SUV 2009",
    "Ford Edge SUV 2012", "Ford Ranger SuperCab 2011", "Ford GT Coupe 2006",
    "Ford F-150 Regular Cab 2012", "Ford F-150 Regular Cab 2007", "Ford Focus Sedan 2007",
    "Ford E-Series Wagon Van 2012", "Ford Fiesta Sedan 2012", "GMC Terrain SUV 2012",
    "GMC Savana Van 2012", "GMC Yukon Hybrid SUV 2012", "GMC Acadia SUV 2012",
    "GMC Canyon Extended Cab 2012", "Geo Metro Convertible 1993", "HUMMER H3T Crew Cab 2010",
    "HUMMER H2 SUT Crew Cab 2009", "Honda Odyssey Minivan 2012", "Honda Odyssey Minivan 2007",
    "Honda Accord Coupe 2012", "Honda Accord Sedan 2012", "Hyundai Veloster Hatchback 2012",
    "Hyundai Santa Fe SUV 2012", "Hyundai Tucson SUV 2012", "Hyundai Veracruz SUV 2012",
    "Hyundai Sonata Hybrid Sedan 2012", "Hyundai Elantra Sedan 2007", "Hyundai Accent Sedan 2012",
    "Hyundai Genesis Sedan 2012", "Hyundai Sonata Sedan 2012",
    "Hyundai Elantra Touring Hatchback 2012", "Hyundai Azera Sedan 2012",
    "Infiniti G Coupe IPL 2012", "Infiniti QX56 SUV 2011", "Isuzu Ascender SUV 2008",
    "Jaguar XK XKR 2012", "Jeep Patriot SUV 2012", "Jeep Wrangler SUV 2012",
    "Jeep Liberty SUV 2012", "Jeep Grand Cherokee SUV 2012", "Jeep Compass SUV 2012",
    "Lamborghini Reventon Coupe 2008", "Lamborghini Aventador Coupe 2012",
    "Lamborghini Gallardo LP 570-4 Superleggera 2012", "Lamborghini Diablo Coupe 2001",
    "Land Rover Range Rover SUV 2012", "Land Rover LR2 SUV 2012", "Lincoln Town Car Sedan 2011",
    "MINI Cooper Roadster Convertible 2012", "Maybach Landaulet Convertible 2012",
    "Mazda Tribute SUV 2011", "McLaren MP4-12C Coupe 2012",
    "Mercedes-Benz 300-Class Convertible 1993", "Mercedes-Benz C-Class Sedan 2012",
    "Mercedes-Benz SL-Class Coupe 2009", "Mercedes-Benz E-Class Sedan 2012",
    "Mercedes-Benz S-Class Sedan 2012", "Mercedes-Benz Sprinter Van 2012",
    "Mitsubishi Lancer Sedan 2012", "Nissan Leaf Hatchback 2012", "Nissan NV Passenger Van 2012",
    "Nissan Juke Hatchback 2012", "Nissan 240SX Coupe 1998", "Plymouth Neon Coupe 1999",
    "Porsche Panamera Sedan 2012", "Ram C/V Cargo Van Minivan 2012",
    "Rolls-Royce Phantom Drophead Coupe Convertible 2012", "Rolls-Royce Ghost Sedan 2012",
    "Rolls-Royce Phantom Sedan 2012", "Scion xD Hatchback 2012", "Spyker C8 Convertible 2009",
    "Spyker C8 Coupe 2009", "Suzuki Aerio Sedan 2007", "Suzuki Kizashi Sedan 2012",
    "Suzuki SX4 Hatchback 2012", "Suzuki SX4 Sedan 2012", "Tesla Model S Sedan 2012",
    "Toyota Sequoia SUV 2012", "Toyota Camry Sedan 2012", "Toyota Corolla Sedan 2012",
    "Toyota 4Runner SUV 2012", "Volkswagen Golf Hatchback 2012", "Volkswagen Golf Hatchback 1991",
    "Volkswagen Beetle Hatchback 2012", "Volvo C30 Hatchback 2012", "Volvo 240 Sedan 1993",
    "Volvo XC90 SUV 2007", "smart fortwo Convertible 2012",
    ),
    "caltech101": (
    "accordion", "airplane", "anchor", "ant", "background", "barrel", "bass", "beaver",
    "binocular", "bonsai", "brain", "brontosaurus", "buddha", "butterfly", "camera", "cannon",
    "side of a car", "ceiling fan", "cellphone", "chair", "chandelier", "body of a cougar cat",
    "face of a cougar cat", "crab", "crayfish", "crocodile", "head of a  crocodile", "cup",
    "dalmatian", "dollar bill", "dolphin", "dragonfly", "electric guitar", "elephant", "emu",
    "euphonium", "ewer", "off-center face", "centered face", "ferry", "flamingo",
    "head of a flamingo", "garfield", "gerenuk", "gramophone", "grand piano", "hawksbill",
    "headphone", "hedgehog", "helicopter", "ibis", "inline skate", "joshua tree", "kangaroo",
    "ketch", "lamp", "laptop", "leopard", "llama", "lobster", "lotus", "mandolin", "mayfly",
    "menorah", "metronome", "minaret", "motorbike", "nautilus", "octopus", "okapi", "pagoda",
    "panda", "pigeon", "pizza", "platypus", "pyramid", "revolver", "rhino", "rooster", "saxophone",
    "schooner", "scissors", "scorpion", "sea horse", "snoopy (cartoon beagle)", "soccer ball",
    "stapler", "starfish", "stegosaurus", "stop sign", "strawberry", "sunflower", "tick",
    "trilobite", "umbrella", "watch", "water lilly", "wheelchair", "wild cat", "windsor chair",
    "wrench", "yin and yang symbol",
    ),
    "flowers": (
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea",
    "english marigold", "tiger lily", "moon orchid", "bird of paradise", "monkshood",
    "globe thistle", "snapdragon", "colt's foot", "king protea", "spear thistle", "yellow iris",
    "globe flower", "purple coneflower", "peruvian lily", "balloon flower",
    "giant white arum lily", "fire lily", "pincushion flower", "fritillary", "red ginger",
    "grape hyacinth", "corn poppy", "prince of wales feathers", "stemless gentian", "artichoke",
    "sweet william", "carnation", "garden phlox", "love in the mist", "mexican aster",
    "alpine sea holly", "ruby-lipped cattleya", "cape flower", "great masterwort", "siam tulip",
    "lenten rose", "barbeton daisy", "daffodil", "sword lily", "poinsettia", "bolero deep blue",
    "wallflower", "marigold", "buttercup", "oxeye daisy", "common dandelion", "petunia",
    "wild pansy", "primula", "sunflower", "pelargonium", "bishop of llandaff", "gaura", "geranium",
    "orange dahlia", "pink and yellow dahlia", "cautleya spicata", "japanese anemone",
    "black-eyed susan", "silverbush", "californian poppy", "osteospermum", "spring crocus",
    "bearded iris", "windflower", "tree poppy", "gazania", "azalea", "water lily", "rose",
    "thorn apple", "morning glory", "passion flower", "lotus", "toad lily", "anthurium",
    "frangipani", "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow", "magnolia",
    "cyclamen", "watercress", "canna lily", "hippeastrum", "bee balm", "air plant", "foxglove",
    "bougainvillea", "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower",
    "trumpet creeper", "blackberry lily",
    ),
    "fgvc_aircraft": (
    "707-320", "727-200", "737-200", "737-300", "737-400", "737-500", "737-600", "737-700",
    "737-800", "737-900", "747-100", "747-200", "747-300", "747-400", "757-200", "757-300",
    "767-200", "767-300", "767-400", "777-200", "777-300", "A300B4", "A310", "A318", "A319",
    "A320", "A321", "A330-200", "A330-300", "A340-200", "A340-300", "A340-500", "A340-600", "A380",
    "ATR-42", "ATR-72", "An-12", "BAE 146-200", "BAE 146-300", "BAE-125", "Beechcraft 1900",
    "Boeing 717", "C-130", "C-47", "CRJ-200", "CRJ-700", "CRJ-900", "Cessna 172", "Cessna 208",
    "Cessna 525", "Cessna 560", "Challenger 600", "DC-10", "DC-3", "DC-6", "DC-8", "DC-9-30",
    "DH-82", "DHC-1", "DHC-6", "DHC-8-100", "DHC-8-300", "DR-400", "Dornier 328", "E-170", "E-190",
    "E-195", "EMB-120", "ERJ 135", "ERJ 145", "Embraer Legacy 600", "Eurofighter Typhoon",
    "F-16A/B", "F/A-18", "Falcon 2000", "Falcon 900", "Fokker 100", "Fokker 50", "Fokker 70",
    "Global Express", "Gulfstream IV", "Gulfstream V", "Hawk T1", "Il-76", "L-1011", "MD-11",
    "MD-80", "MD-87", "MD-90", "Metroliner", "Model B200", "PA-28", "SR-20", "Saab 2000",
    "Saab 340", "Spitfire", "Tornado", "Tu-134", "Tu-154", "Yak-42",
    ),
    "country211": (
    "Andorra", "United Arab Emirates", "Afghanistan", "Antigua and Barbuda", "Anguilla", "Albania",
    "Armenia", "Angola", "Antarctica", "Argentina", "Austria", "Australia", "Aruba",
    "Aland Islands", "Azerbaijan", "Bosnia and Herzegovina", "Barbados", "Bangladesh", "Belgium",
    "Burkina Faso", "Bulgaria", "Bahrain", "Benin", "Bermuda", "Brunei Darussalam", "Bolivia",
    "Bonaire, Saint Eustatius and Saba", "Brazil", "Bahamas", "Bhutan", "Botswana", "Belarus",
    "Belize", "Canada", "DR Congo", "Central African Republic", "Switzerland", "Cote d'Ivoire",
    "Cook Islands", "Chile", "Cameroon", "China", "Colombia", "Costa Rica", "Cuba", "Cabo Verde",
    "Curacao", "Cyprus", "Czech Republic", "Germany", "Denmark", "Dominica", "Dominican Republic",
    "Algeria", "Ecuador", "Estonia", "Egypt", "Spain", "Ethiopia", "Finland", "Fiji",
    "Falkland Islands", "Faeroe Islands", "France", "Gabon", "United Kingdom", "Grenada",
    "Georgia", "French Guiana", "Guernsey", "Ghana", "Gibraltar", "Greenland", "Gambia",
    "Guadeloupe", "Greece", "South Georgia and South Sandwich Is.", "Guatemala", "Guam", "Guyana",
    "Hong Kong", "Honduras", "Croatia", "Haiti", "Hungary", "Indonesia", "Ireland", "Israel",
    "Isle of Man", "India", "Iraq", "Iran", "Iceland", "Italy", "Jersey", "Jamaica", "Jordan",
    "Japan", "Kenya", "Kyrgyz Republic", "Cambodia", "St. Kitts and Nevis", "North Korea",
    "South Korea", "Kuwait", "Cayman Islands", "Kazakhstan", "Laos", "Lebanon", "St. Lucia",
    "Liechtenstein", "Sri Lanka", "Liberia", "Lithuania", "Luxembourg", "Latvia", "Libya",
    "Morocco", "Monaco", "Moldova", "Montenegro", "Saint-Martin", "Madagascar", "Macedonia",
    "Mali", "Myanmar", "Mongolia", "Macau", "Martinique", "Mauritania", "Malta", "Mauritius",
    "Maldives", "Malawi", "Mexico", "Malaysia", "Mozambique", "Namibia", "New Caledonia",
    "Nigeria", "Nicaragua", "Netherlands", "Norway", "Nepal", "New Zealand", "Oman", "Panama",
    "Peru", "French Polynesia", "Papua New Guinea", "Philippines", "Pakistan", "Poland",
    "Puerto Rico", "Palestine", "Portugal", "Palau", "Paraguay", "Qatar", "Reunion", "Romania",
    "Serbia", "Russia", "Rwanda", "Saudi Arabia", "Solomon Islands", "Seychelles", "Sudan",
    "Sweden", "Singapore", "St. Helena", "Slovenia", "Svalbard and Jan Mayen Islands", "Slovakia",
    "Sierra Leone", "San Marino", "Senegal", "Somalia", "South Sudan", "El Salvador",
    "Sint Maarten", "Syria", "Eswatini", "Togo", "Thailand", "Tajikistan", "Timor-Leste",
    "Turkmenistan", "Tunisia", "Tonga", "Turkey", "Trinidad and Tobago", "Taiwan", "Tanzania",
    "Ukraine", "Uganda", "United States", "Uruguay", "Uzbekistan", "Vatican", "Venezuela",
    "British Virgin Islands", "United States Virgin Islands", "Vietnam", "Vanuatu", "Samoa",
    "Kosovo", "Yemen", "South Africa", "Zambia", "Zimbabwe",
    ),
    "gtsrb": (
    "red and white circle 20 kph speed limit", "red and white circle 30 kph speed limit",
    "red and white circle 50 kph speed limit", "red and white circle 60 kph speed limit",
    "red and white circle 70 kph speed limit", "red and white circle 80 kph speed limit",
    "end / de-restriction of 80 kph speed limit", "red and white circle 100 kph speed limit",
    "red and white circle 120 kph speed limit",
    "red and white circle red car and black car no passing",
    "red and white circle red truck and black car no passing",
    "red and white triangle road intersection warning", "white and yellow diamond priority road",
    "red and white upside down triangle yield right-of-way", "stop", "empty red and white circle",
    "red and white circle no truck entry", "red circle with white horizonal stripe no entry",
    "red and white triangle with exclamation mark warning",
    "red and white triangle with black left curve approaching warning",
    "red and white triangle with black right curve approaching warning",
    "red and white triangle with black double curve approaching warning",
    "red and white triangle rough / bumpy road warning",
    "red and white triangle car skidding / slipping warning",
    "red and white triangle with merging / narrow lanes warning",
    "red and white triangle with person digging / construction / road work warning",
    "red and white triangle with traffic light approaching warning",
    "red and white triangle with person walking warning",
    "red and white triangle with child and person walking warning",
    "red and white triangle with bicyle warning",
    "red and white triangle with snowflake / ice warning",
    "red and white triangle with deer warning", "white circle with gray strike bar no speed limit",
    "blue circle with white right turn arrow mandatory",
    "blue circle with white left turn arrow mandatory",
    "blue circle with white forward arrow mandatory",
    "blue circle with white forward or right turn arrow mandatory",
    "blue circle with white forward or left turn arrow mandatory",
    "blue circle with white keep right arrow mandatory",
    "blue circle with white keep left arrow mandatory",
    "blue circle with white arrows indicating a traffic circle",
    "white circle with gray strike bar indicating no passing for cars has ended",
    "white circle with gray strike bar indicating no passing for trucks has ended",
    ),
    "resisc45": (
    "airplane", "airport", "baseball diamond", "basketball court", "beach", "bridge", "chaparral",
    "church", "circular farmland", "cloud", "commercial area", "dense residential", "desert",
    "forest", "freeway", "golf course", "ground track field", "harbor", "industrial area",
    "intersection", "island", "lake", "meadow", "medium residential", "mobile home park",
    "mountain", "overpass", "palace", "parking lot", "railway", "railway station",
    "rectangular farmland", "river", "roundabout", "runway", "sea ice", "ship", "snowberg",
    "sparse residential", "stadium", "storage tank", "tennis court", "terrace",
    "thermal power station", "wetland",
    ),
    "dtd": (
    "banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked",
    "crosshatched", "crystalline", "dotted", "fibrous", "flecked", "freckled", "frilly", "gauzy",
    "grid", "grooved", "honeycombed", "interlaced", "knitted", "lacelike", "lined", "marbled",
    "matted", "meshed", "paisley", "perforated", "pitted", "pleated", "polka-dotted", "porous",
    "potholed", "scaly", "smeared", "spiralled", "sprinkled", "stained", "stratified", "striped",
    "studded", "swirly", "veined", "waffled", "woven", "wrinkled", "zigzagged",
    ),
    "pets": (
    "Abyssinian", "american bulldog", "american pit bull terrier", "basset hound", "beagle",
    "Bengal", "Birman", "Bombay", "boxer", "British Shorthair", "chihuahua", "Egyptian Mau",
    "english cocker spaniel", "english setter", "german shorthaired", "great pyrenees", "havanese",
    "japanese chin", "keeshond", "leonberger", "Maine Coon", "miniature pinscher", "newfoundland",
    "Persian", "pomeranian", "pug", "Ragdoll", "Russian Blue", "saint bernard", "samoyed",
    "scottish terrier", "shiba inu", "Siamese", "Sphynx", "staffordshire bull terrier",
    "wheaten terrier", "yorkshire terrier",
    ),
}

IMAGENET_A_WNIDS = tuple("""
    n01498041 n01531178 n01534433 n01558993 n01580077 n01614925 n01616318 n01631663 n01641577
    n01669191 n01677366 n01687978 n01694178 n01698640 n01735189 n01770081 n01770393 n01774750
    n01784675 n01819313 n01820546 n01833805 n01843383 n01847000 n01855672 n01882714 n01910747
    n01914609 n01924916 n01944390 n01985128 n01986214 n02007558 n02009912 n02037110 n02051845
    n02077923 n02085620 n02099601 n02106550 n02106662 n02110958 n02119022 n02123394 n02127052
    n02129165 n02133161 n02137549 n02165456 n02174001 n02177972 n02190166 n02206856 n02219486
    n02226429 n02231487 n02233338 n02236044 n02259212 n02268443 n02279972 n02280649 n02281787
    n02317335 n02325366 n02346627 n02356798 n02361337 n02410509 n02445715 n02454379 n02486410
    n02492035 n02504458 n02655020 n02669723 n02672831 n02676566 n02690373 n02701002 n02730930
    n02777292 n02782093 n02787622 n02793495 n02797295 n02802426 n02814860 n02815834 n02837789
    n02879718 n02883205 n02895154 n02906734 n02948072 n02951358 n02980441 n02992211 n02999410
    n03014705 n03026506 n03124043 n03125729 n03187595 n03196217 n03223299 n03250847 n03255030
    n03291819 n03325584 n03355925 n03384352 n03388043 n03417042 n03443371 n03444034 n03445924
    n03452741 n03483316 n03584829 n03590841 n03594945 n03617480 n03666591 n03670208 n03717622
    n03720891 n03721384 n03724870 n03775071 n03788195 n03804744 n03837869 n03840681 n03854065
    n03888257 n03891332 n03935335 n03982430 n04019541 n04033901 n04039381 n04067472 n04086273
    n04099969 n04118538 n04131690 n04133789 n04141076 n04146614 n04147183 n04179913 n04208210
    n04235860 n04252077 n04252225 n04254120 n04270147 n04275548 n04310018 n04317175 n04344873
    n04347754 n04355338 n04366367 n04376876 n04389033 n04399382 n04442312 n04456115 n04482393
    n04507155 n04509417 n04532670 n04540053 n04554684 n04562935 n04591713 n04606251 n07583066
    n07695742 n07697313 n07697537 n07714990 n07718472 n07720875 n07734744 n07749582 n07753592
    n07760859 n07768694 n07831146 n09229709 n09246464 n09472597 n09835506 n11879895 n12057211
    n12144580 n12267677
""".split())

IMAGENET_R_WNIDS = tuple("""
    n01443537 n01484850 n01494475 n01498041 n01514859 n01518878 n01531178 n01534433 n01614925
    n01616318 n01630670 n01632777 n01644373 n01677366 n01694178 n01748264 n01770393 n01774750
    n01784675 n01806143 n01820546 n01833805 n01843383 n01847000 n01855672 n01860187 n01882714
    n01910747 n01944390 n01983481 n01986214 n02007558 n02009912 n02051845 n02056570 n02066245
    n02071294 n02077923 n02085620 n02086240 n02088094 n02088238 n02088364 n02088466 n02091032
    n02091134 n02092339 n02094433 n02096585 n02097298 n02098286 n02099601 n02099712 n02102318
    n02106030 n02106166 n02106550 n02106662 n02108089 n02108915 n02109525 n02110185 n02110341
    n02110958 n02112018 n02112137 n02113023 n02113624 n02113799 n02114367 n02117135 n02119022
    n02123045 n02128385 n02128757 n02129165 n02129604 n02130308 n02134084 n02138441 n02165456
    n02190166 n02206856 n02219486 n02226429 n02233338 n02236044 n02268443 n02279972 n02317335
    n02325366 n02346627 n02356798 n02363005 n02364673 n02391049 n02395406 n02398521 n02410509
    n02423022 n02437616 n02445715 n02447366 n02480495 n02480855 n02481823 n02483362 n02486410
    n02510455 n02526121 n02607072 n02655020 n02672831 n02701002 n02749479 n02769748 n02793495
    n02797295 n02802426 n02808440 n02814860 n02823750 n02841315 n02843684 n02883205 n02906734
    n02909870 n02939185 n02948072 n02950826 n02951358 n02966193 n02980441 n02992529 n03124170
    n03272010 n03345487 n03372029 n03424325 n03452741 n03467068 n03481172 n03494278 n03495258
    n03498962 n03594945 n03602883 n03630383 n03649909 n03676483 n03710193 n03773504 n03775071
    n03888257 n03930630 n03947888 n04086273 n04118538 n04133789 n04141076 n04146614 n04147183
    n04192698 n04254680 n04266014 n04275548 n04310018 n04325704 n04347754 n04389033 n04409515
    n04465501 n04487394 n04522168 n04536866 n04552348 n04591713 n07614500 n07693725 n07695742
    n07697313 n07697537 n07714571 n07714990 n07718472 n07720875 n07734744 n07742313 n07745940
    n07749582 n07753275 n07753592 n07768694 n07873807 n07880968 n07920052 n09472597 n09835506
    n10565667 n12267677
""".split())
